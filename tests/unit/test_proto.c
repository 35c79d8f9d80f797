/* Unit tests for proto/: asset ids, the certificate-to-asset rule, topics, serial and time
 * helpers (the CRL checks are exercised in test_broker.c, through the plugin's own use). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#undef malloc
#undef calloc
#undef realloc
#undef free

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "proto.h"

static void test_asset_ids(void **state)
{
    char long_id[70];

    (void)state;
    assert_true(proto_asset_id_valid("meter"));
    assert_true(proto_asset_id_valid("cap_bank-2.a"));
    memset(long_id, 'x', 64);
    long_id[64] = '\0';
    assert_true(proto_asset_id_valid(long_id));
    long_id[64] = 'x';
    long_id[65] = '\0';
    assert_false(proto_asset_id_valid(long_id));
    assert_false(proto_asset_id_valid(""));
    assert_false(proto_asset_id_valid(NULL));
    assert_false(proto_asset_id_valid("a/b"));
    assert_false(proto_asset_id_valid("a+b"));
    assert_false(proto_asset_id_valid("a#b"));
    assert_false(proto_asset_id_valid("a b"));
    assert_false(proto_asset_id_valid("a\nb"));
    assert_false(proto_asset_id_valid(".hidden"));
    assert_false(proto_asset_id_valid("-opt"));
    assert_false(proto_asset_id_valid("caf\xc3\xa9"));
}

/* A self-signed certificate carrying the given SAN URIs (len -1: strlen) and CN. */
static X509 *cert_with(const char *cn, const char *const *uris, const int *lens, int n)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    GENERAL_NAMES *names = GENERAL_NAMES_new();

    assert_non_null(key);
    assert_non_null(x);
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    for (int i = 0; i < n; i++) {
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        ASN1_STRING_set(s, uris[i], lens[i]);
        GENERAL_NAME_set0_value(gn, GEN_URI, s);
        sk_GENERAL_NAME_push(names, gn);
    }
    if (n > 0)
        X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, 0);
    GENERAL_NAMES_free(names);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    EVP_PKEY_free(key);
    return x;
}

static void test_cert_asset_id(void **state)
{
    static const char nul_uri[] = "urn:mqpki:asset:dev1\0evil";
    const char *one[] = {"https://example.org/x", "urn:mqpki:asset:meter-7"};
    const int one_len[] = {-1, -1};
    const char *two[] = {"urn:mqpki:asset:a", "urn:mqpki:asset:b"};
    const int two_len[] = {-1, -1};
    const char *same[] = {"urn:mqpki:asset:a", "urn:mqpki:asset:a"};
    const char *nul[] = {nul_uri};
    const int nul_len[] = {(int)sizeof(nul_uri) - 1};
    const char *bad[] = {"urn:mqpki:asset:a/b", "urn:mqpki:asset:"};
    char id[PROTO_ASSET_ID_MAX + 1];
    X509 *x;

    (void)state;
    x = cert_with("meter-7", one, one_len, 2);
    assert_int_equal(proto_cert_asset_id(x, id), 1);
    assert_string_equal(id, "meter-7");
    X509_free(x);
    /* Two assets in one certificate: it speaks for neither. */
    x = cert_with("a", two, two_len, 2);
    assert_int_equal(proto_cert_asset_id(x, id), 0);
    assert_string_equal(id, "");
    X509_free(x);
    x = cert_with("a", same, two_len, 2);
    assert_int_equal(proto_cert_asset_id(x, id), 1);
    X509_free(x);
    /* An embedded NUL never shortens the name to "dev1". */
    x = cert_with("dev1", nul, nul_len, 1);
    assert_int_equal(proto_cert_asset_id(x, id), 0);
    X509_free(x);
    x = cert_with("a", bad, two_len, 2);
    assert_int_equal(proto_cert_asset_id(x, id), 0);
    X509_free(x);
    /* The CN alone names nothing: every certificate of ours carries the URI. */
    x = cert_with("dev1", NULL, NULL, 0);
    assert_int_equal(proto_cert_asset_id(x, id), 0);
    X509_free(x);
    assert_int_equal(proto_cert_asset_id(NULL, id), 0);
}

static void test_topics(void **state)
{
    char t[PROTO_TOPIC_MAX], id[PROTO_ASSET_ID_MAX + 1];

    (void)state;
    assert_int_equal(proto_topic_events("b1", t), 0);
    assert_string_equal(t, "mqpki/v1/events/b1");
    assert_int_equal(proto_topic_asset_cmd("meter", t), 0);
    assert_string_equal(t, "mqpki/v1/assets/meter/cmd");
    assert_int_equal(proto_topic_asset_cmd("a/#", t), -1);
    {
        int gen = 0, delta = -1;
        assert_int_equal(proto_topic_crl_generation(2, 1, t), 0);
        assert_string_equal(t, "mqpki/v1/crl/generation/2/delta");
        assert_int_equal(proto_topic_crl_generation_parse(t, &gen, &delta), 0);
        assert_int_equal(gen, 2);
        assert_int_equal(delta, 1);
        assert_int_equal(
            proto_topic_crl_generation_parse("mqpki/v1/crl/generation/12/full", &gen, &delta), 0);
        assert_int_equal(gen * 10 + delta, 120);
        assert_int_equal(proto_topic_crl_generation(0, 0, t), -1);
        assert_int_equal(
            proto_topic_crl_generation_parse("mqpki/v1/crl/generation/0/full", &gen, &delta), -1);
        assert_int_equal(
            proto_topic_crl_generation_parse("mqpki/v1/crl/generation/2/fullx", &gen, &delta), -1);
        assert_int_equal(
            proto_topic_crl_generation_parse("mqpki/v1/crl/generation/2", &gen, &delta), -1);
        assert_int_equal(proto_topic_crl_generation_parse("mqpki/v1/crl/full", &gen, &delta), -1);
    }
    memset(id, 'x', PROTO_ASSET_ID_MAX);
    id[PROTO_ASSET_ID_MAX] = '\0';
    assert_int_equal(proto_topic_asset_cmd(id, t), 0);
    assert_true(strlen(t) < PROTO_TOPIC_MAX);
}

static void test_serials(void **state)
{
    char hex[PROTO_SERIAL_HEX_MAX + 1], big[64];
    ASN1_INTEGER *a = ASN1_INTEGER_new();
    BIGNUM *bn = NULL;

    (void)state;
    ASN1_INTEGER_set(a, 10);
    assert_int_equal(proto_serial_hex(a, hex), 0);
    assert_string_equal(hex, "0A");
    ASN1_INTEGER_set(a, -5);
    assert_int_equal(proto_serial_hex(a, hex), -1);
    /* 21 octets: longer than RFC 5280 allows. */
    memset(big, 'F', 42);
    big[0] = '7';
    big[42] = '\0';
    assert_true(BN_hex2bn(&bn, big) > 0);
    assert_non_null(BN_to_ASN1_INTEGER(bn, a));
    assert_int_equal(proto_serial_hex(a, hex), -1);
    big[40] = '\0';
    assert_true(BN_hex2bn(&bn, big) > 0);
    assert_non_null(BN_to_ASN1_INTEGER(bn, a));
    assert_int_equal(proto_serial_hex(a, hex), 0);
    assert_string_equal(hex, big);
    BN_free(bn);
    ASN1_INTEGER_free(a);

    assert_int_equal(proto_serial_norm("0x0a:1b:C2", hex), 0);
    assert_string_equal(hex, "0A1BC2");
    assert_int_equal(proto_serial_norm("", hex), -1);
    assert_int_equal(proto_serial_norm("0x", hex), -1);
    assert_int_equal(proto_serial_norm("12g4", hex), -1);
    assert_int_equal(proto_serial_norm(NULL, hex), -1);
    memset(big, 'a', 41);
    big[41] = '\0';
    assert_int_equal(proto_serial_norm(big, hex), -1);
    big[40] = '\0';
    assert_int_equal(proto_serial_norm(big, hex), 0);
    assert_int_equal((int)strlen(hex), PROTO_SERIAL_HEX_MAX);
}

static void test_time(void **state)
{
    ASN1_TIME *t = ASN1_TIME_set(NULL, 1764460800); /* 2025-11-30T00:00:00Z */
    int64_t v = 1;

    (void)state;
    assert_int_equal(proto_asn1_time(t, &v), 0);
    assert_int_equal(v, 1764460800);
    assert_int_equal(proto_asn1_time(NULL, &v), -1);
    assert_int_equal(v, 0);
    ASN1_TIME_free(t);
}

/* The signed checkpoint bytes are a fixed layout anyone can rebuild (docs/security.md). */
static void test_audit_tbs(void **state)
{
    static const unsigned char want_prefix[] = "mqpki-audit-checkpoint/v1";
    unsigned char head[PROTO_AUDIT_HASH_LEN], tbs[PROTO_AUDIT_TBS_LEN], sig[256];
    EVP_PKEY *key = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t sig_len = sizeof(sig);
    char why[128];

    (void)state;
    assert_non_null(key);
    assert_non_null(other);
    memset(head, 0xAB, sizeof(head));
    proto_audit_tbs(0x0102030405060708, 42, head, -1, tbs);
    assert_memory_equal(tbs, want_prefix, sizeof(want_prefix)); /* with its NUL */
    assert_int_equal(tbs[26], 0x01);
    assert_int_equal(tbs[33], 0x08);
    assert_int_equal(tbs[41], 42);
    assert_memory_equal(tbs + 42, head, sizeof(head));
    assert_int_equal(tbs[74], 0xFF); /* time -1, two's complement */
    assert_int_equal(tbs[81], 0xFF);
    assert_non_null(md);
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &sig_len, tbs, sizeof(tbs)), 1);
    assert_int_equal(proto_audit_verify(key, tbs, sizeof(tbs), sig, sig_len, why, sizeof(why)), 0);
    assert_int_equal(proto_audit_verify(other, tbs, sizeof(tbs), sig, sig_len, why, sizeof(why)),
                     -1);
    tbs[50] ^= 1;
    assert_int_equal(proto_audit_verify(key, tbs, sizeof(tbs), sig, sig_len, why, sizeof(why)), -1);
    assert_int_equal(proto_audit_verify(key, tbs, sizeof(tbs), sig, 0, why, sizeof(why)), -1);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

/* The CRL notice: made and read back; every hostile variation refused. */
static void test_crl_notice(void **state)
{
    static const unsigned char der[] = {0x30, 0x03, 0x02, 0x01, 0x05};
    struct proto_crl_notice n;
    char *text = NULL, why[256], sha[65], buf[1400];
    size_t len = 0;
    static const char *const bad[] = {
        "",
        "{}",
        "[1]",
        "{\"crl_ref\":2,\"number\":1,\"size\":5,\"sha256\":\"%s\",\"url\":\"https://a/b\"}",
        "{\"crl_ref\":1,\"number\":-1,\"size\":5,\"sha256\":\"%s\",\"url\":\"https://a/b\"}",
        "{\"crl_ref\":1,\"number\":1,\"size\":0,\"sha256\":\"%s\",\"url\":\"https://a/b\"}",
        "{\"crl_ref\":1,\"number\":1,\"size\":99999999999,\"sha256\":\"%s\",\"url\":\"https://a/"
        "b\"}",
        "{\"crl_ref\":1,\"number\":1,\"size\":5,\"sha256\":\"%s\",\"url\":\"file:///etc/passwd\"}",
        "{\"crl_ref\":1,\"number\":1,\"size\":5,\"sha256\":\"%s\",\"url\":\"https://a/b c\"}",
        "{\"crl_ref\":1,\"number\":1,\"size\":5,\"sha256\":\"%s\",\"url\":\"https://a/b\",\"x\":1}",
        "{\"crl_ref\":1,\"number\":1,\"number\":2,\"size\":5,\"sha256\":\"%s\",\"url\":\"https://"
        "a\"}",
        "{\"crl_ref\":1,\"number\":1,\"size\":5,\"sha256\":\"ABC%s\",\"url\":\"https://a/b\"}",
        "{\"crl_ref\":1,\"number\":\"1\",\"size\":5,\"sha256\":\"%s\",\"url\":\"https://a/b\"}",
    };

    assert_int_equal(proto_crl_notice_make(7, der, sizeof(der),
                                           "https://ca.example:8443/crl/issuing.crl", &text, &len),
                     0);
    assert_true(proto_crl_notice_is((const unsigned char *)text, len));
    assert_false(proto_crl_notice_is(der, sizeof(der)));
    assert_int_equal(proto_crl_notice_parse((const unsigned char *)text, len, &n, why, sizeof(why)),
                     0);
    assert_int_equal(n.number, 7);
    assert_int_equal(n.size, sizeof(der));
    assert_string_equal(n.url, "https://ca.example:8443/crl/issuing.crl");
    assert_true(proto_crl_notice_matches(&n, der, sizeof(der)));
    assert_false(proto_crl_notice_matches(&n, der, sizeof(der) - 1));
    {
        unsigned char other[sizeof(der)];
        memcpy(other, der, sizeof(der));
        other[4] = 6;
        assert_false(proto_crl_notice_matches(&n, other, sizeof(other)));
    }
    /* The SHA-256 as the notice spells it, for the hostile variations below. */
    {
        const char *p = strstr(text, "\"sha256\":\"") + 10;
        memcpy(sha, p, 64);
        sha[64] = '\0';
    }
    free(text);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *at = strstr(bad[i], "%s");
        if (at != NULL)
            snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - bad[i]), bad[i], sha, at + 2);
        else
            snprintf(buf, sizeof(buf), "%s", bad[i]);
        assert_int_equal(
            proto_crl_notice_parse((const unsigned char *)buf, strlen(buf), &n, why, sizeof(why)),
            -1);
    }
    memset(buf, ' ', sizeof(buf));
    assert_int_equal(
        proto_crl_notice_parse((const unsigned char *)buf, sizeof(buf), &n, why, sizeof(why)), -1);
    assert_false(proto_crl_url_ok("https://a/\"b"));
    assert_false(proto_crl_url_ok("ftp://a/b"));
    assert_true(proto_crl_url_ok("http://127.0.0.1:80/crl/issuing.crl"));
    assert_int_equal(proto_crl_notice_make(7, der, sizeof(der), "javascript:x", &text, &len), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_asset_ids),  cmocka_unit_test(test_cert_asset_id),
        cmocka_unit_test(test_topics),     cmocka_unit_test(test_serials),
        cmocka_unit_test(test_time),       cmocka_unit_test(test_audit_tbs),
        cmocka_unit_test(test_crl_notice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
