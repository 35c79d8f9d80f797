/*
 * Unit tests for ca/: hierarchy, CSR parsing and policy, leaf profiles, serials, CRLs and
 * encoders. Keys are plain software keys; the token path is tested with hsm/.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

/*
 * UNIT_TESTING makes cmocka.h replace malloc/free with its checking allocator, but buffers cross
 * into and out of the library (which uses the real ones): keep the real allocator here.
 */
#undef malloc
#undef calloc
#undef realloc
#undef free

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "ca_int.h"
#include "common.h"

#define BASE_URL "https://pki.example:8443/"
#define CRL_URL  "https://pki.example:8443/crl/issuing.crl"

struct fixture {
    EVP_PKEY *root_key, *issuing_key;
    X509 *root, *issuing;
    struct ca *ca;
};

/* ---- helpers ---- */

static void read_data(const char *name, unsigned char **out, size_t *len)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/ca/%s", MQPKI_TEST_DATA, name);
    assert_int_equal(mqpki_file_read(path, 1 << 20, out, len), MQPKI_OK);
}

static X509_REQ *load_csr(const char *name)
{
    unsigned char *data = NULL;
    size_t len = 0;
    X509_REQ *req = NULL;

    read_data(name, &data, &len);
    assert_int_equal(ca_csr_parse(data, len, &req), MQPKI_OK);
    free(data);
    return req;
}

/* Builds root + issuing with the given key generator and opens the CA. */
static void make_ca(struct fixture *f, const char *curve)
{
    f->root_key = EVP_EC_gen(curve);
    f->issuing_key = EVP_EC_gen(curve);
    assert_non_null(f->root_key);
    assert_non_null(f->issuing_key);
    assert_int_equal(ca_root_create(f->root_key, "mqpki test root", 3650, &f->root), MQPKI_OK);
    assert_int_equal(ca_issuing_create(f->root, f->root_key, f->issuing_key, "mqpki test issuing",
                                       1825, &f->issuing),
                     MQPKI_OK);
    assert_int_equal(ca_open(f->issuing, f->issuing_key, f->root, BASE_URL, &f->ca), MQPKI_OK);
}

static void free_ca(struct fixture *f)
{
    ca_free(f->ca);
    X509_free(f->root);
    X509_free(f->issuing);
    EVP_PKEY_free(f->root_key);
    EVP_PKEY_free(f->issuing_key);
    memset(f, 0, sizeof(*f));
}

static int setup(void **state)
{
    static struct fixture f;

    make_ca(&f, "P-256");
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    free_ca(*state);
    return 0;
}

/* X509_verify_cert of cert with untrusted intermediates (may be NULL) against root. */
static int verify_chain(X509 *root, STACK_OF(X509) * untrusted, X509 *cert, int purpose)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int ok;

    assert_non_null(store);
    assert_non_null(ctx);
    assert_int_equal(X509_STORE_add_cert(store, root), 1);
    assert_int_equal(X509_STORE_CTX_init(ctx, store, cert, untrusted), 1);
    if (purpose > 0)
        X509_STORE_CTX_set_purpose(ctx, purpose);
    ok = X509_verify_cert(ctx);
    if (ok != 1)
        print_message("verify: %s\n", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return ok;
}

static int verify_leaf(struct fixture *f, X509 *leaf, int purpose)
{
    STACK_OF(X509) *chain = sk_X509_new_null();
    int ok;

    assert_non_null(chain);
    assert_true(sk_X509_push(chain, f->issuing) > 0);
    ok = verify_chain(f->root, chain, leaf, purpose);
    sk_X509_free(chain);
    return ok;
}

static void issue(struct fixture *f, EVP_PKEY *pub, struct ca_issue_opts *o, X509 **out)
{
    char serial[PROTO_SERIAL_HEX_MAX + 1];

    assert_int_equal(ca_serial_new(serial), MQPKI_OK);
    o->serial_hex = serial;
    assert_int_equal(ca_issue_cert(f->ca, pub, o, out), MQPKI_OK);
    o->serial_hex = NULL;
}

static int ext_critical(X509 *x, int nid)
{
    int i = X509_get_ext_by_NID(x, nid, -1);

    assert_true(i >= 0);
    return X509_EXTENSION_get_critical(X509_get_ext(x, i));
}

static int san_has(X509 *x, int type, const char *text)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int i, found = 0;

    for (i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        int t;
        ASN1_STRING *s = GENERAL_NAME_get0_value(g, &t);

        if (t == type && (size_t)ASN1_STRING_length(s) == strlen(text) &&
            memcmp(ASN1_STRING_get0_data(s), text, strlen(text)) == 0)
            found = 1;
    }
    GENERAL_NAMES_free(gens);
    return found;
}

static void expect_cn(X509 *x, const char *cn)
{
    char buf[128];

    assert_true(
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, cn);
}

static void expect_detail(int rc, int want, const char *needle)
{
    const char *d = mqpki_err_detail(rc);

    assert_int_equal(rc, want);
    if (strstr(d, needle) == NULL)
        fail_msg("detail \"%s\" lacks \"%s\"", d, needle);
}

/* ---- tests ---- */

static void test_names(void **state)
{
    assert_int_equal(ca_profile_parse("device"), CA_PROFILE_DEVICE);
    assert_int_equal(ca_profile_parse("broker"), CA_PROFILE_BROKER);
    assert_int_equal(ca_profile_parse("service"), CA_PROFILE_SERVICE);
    assert_int_equal(ca_profile_parse("root"), -1);
    assert_int_equal(ca_profile_parse(NULL), -1);
    assert_string_equal(ca_profile_name(CA_PROFILE_BROKER), "broker");
    assert_null(ca_profile_name((enum ca_profile)7));
    assert_int_equal(ca_reason_parse("hold"), CA_REASON_HOLD);
    assert_int_equal(ca_reason_parse("key-compromise"), CA_REASON_KEY_COMPROMISE);
    assert_int_equal(ca_reason_parse("cessation"), CA_REASON_CESSATION);
    assert_int_equal(ca_reason_parse("bogus"), -1);
    assert_string_equal(ca_reason_name(CA_REASON_AFFILIATION_CHANGED), "affiliation-changed");
    assert_string_equal(ca_reason_name(CA_REASON_UNSPECIFIED), "unspecified");
    assert_null(ca_reason_name((enum ca_reason)9));
}

static void test_hierarchy(void **state)
{
    struct fixture *f = *state;
    const ASN1_OCTET_STRING *root_ski, *iss_aki;
    BASIC_CONSTRAINTS *bc;

    /* Root: self-signed CA with SKI == AKI keyid. */
    assert_true(X509_get_extension_flags(f->root) & EXFLAG_SS);
    assert_int_equal(X509_check_ca(f->root), 1);
    assert_int_equal(X509_get_version(f->root), X509_VERSION_3);
    assert_int_equal(X509_get_key_usage(f->root), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    assert_int_equal(ext_critical(f->root, NID_basic_constraints), 1);
    assert_int_equal(ext_critical(f->root, NID_key_usage), 1);
    root_ski = X509_get0_subject_key_id(f->root);
    assert_non_null(root_ski);
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(f->root), root_ski), 0);
    expect_cn(f->root, "mqpki test root");

    /* Issuing: CA:TRUE pathlen 0, AKI = root SKI, issuer = root subject. */
    assert_int_equal(X509_check_ca(f->issuing), 1);
    assert_int_equal(X509_get_pathlen(f->issuing), 0);
    bc = X509_get_ext_d2i(f->issuing, NID_basic_constraints, NULL, NULL);
    assert_non_null(bc);
    assert_true(bc->ca);
    assert_non_null(bc->pathlen);
    BASIC_CONSTRAINTS_free(bc);
    assert_int_equal(ext_critical(f->issuing, NID_basic_constraints), 1);
    assert_int_equal(X509_get_key_usage(f->issuing), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    iss_aki = X509_get0_authority_key_id(f->issuing);
    assert_int_equal(ASN1_OCTET_STRING_cmp(iss_aki, root_ski), 0);
    assert_non_null(X509_get0_subject_key_id(f->issuing));
    assert_int_equal(
        X509_NAME_cmp(X509_get_issuer_name(f->issuing), X509_get_subject_name(f->root)), 0);
    expect_cn(f->issuing, "mqpki test issuing");
    /* notBefore is now minus 5 minutes. */
    assert_true(X509_cmp_time(X509_get0_notBefore(f->issuing), NULL) < 0);
    assert_int_equal(verify_chain(f->root, NULL, f->issuing, 0), 1);
    assert_int_equal(X509_get_signature_nid(f->issuing), NID_ecdsa_with_SHA256);
    assert_ptr_equal(ca_issuing_cert(f->ca), f->issuing);
    assert_ptr_equal(ca_root_cert(f->ca), f->root);
}

static void test_open_mismatch(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *other = EVP_EC_gen("P-256");
    struct ca *ca = (struct ca *)1;

    assert_non_null(other);
    expect_detail(ca_open(f->issuing, other, f->root, NULL, &ca), MQPKI_ERR_INVALID,
                  "does not match");
    assert_null(ca);
    /* The root key is not the issuing key either. */
    expect_detail(ca_open(f->issuing, f->root_key, f->root, NULL, &ca), MQPKI_ERR_INVALID,
                  "does not match");
    /* The issuing CA under the wrong root. */
    expect_detail(ca_open(f->issuing, f->issuing_key, f->issuing, NULL, &ca), MQPKI_ERR_INVALID,
                  "not signed by the root");
    EVP_PKEY_free(other);
    /* Without a base URL the CA works and leaves carry no CRL DP. */
    assert_int_equal(ca_open(f->issuing, f->issuing_key, f->root, NULL, &ca), MQPKI_OK);
    {
        EVP_PKEY *k = EVP_EC_gen("P-256");
        struct ca_issue_opts o = {.profile = CA_PROFILE_DEVICE, .asset_id = "nodp"};
        char serial[PROTO_SERIAL_HEX_MAX + 1];
        X509 *leaf = NULL;

        assert_int_equal(ca_serial_new(serial), MQPKI_OK);
        o.serial_hex = serial;
        assert_int_equal(ca_issue_cert(ca, k, &o, &leaf), MQPKI_OK);
        assert_int_equal(X509_get_ext_by_NID(leaf, NID_crl_distribution_points, -1), -1);
        X509_free(leaf);
        EVP_PKEY_free(k);
    }
    ca_free(ca);
    ca_free(NULL);
}

static void test_leaf_from_ca_true_csr(void **state)
{
    struct fixture *f = *state;
    X509_REQ *req = load_csr("csr-ca-true.pem");
    struct ca_issue_opts o = {.profile = CA_PROFILE_DEVICE, .asset_id = "sensor-042"};
    X509 *leaf = NULL;
    BASIC_CONSTRAINTS *bc;
    CRL_DIST_POINTS *dps;
    char serial[PROTO_SERIAL_HEX_MAX + 1], got[PROTO_SERIAL_HEX_MAX + 1];
    char buf[128];

    assert_int_equal(ca_csr_check(req), MQPKI_OK);
    assert_int_equal(ca_serial_new(serial), MQPKI_OK);
    o.serial_hex = serial;
    assert_int_equal(ca_issue_cert(f->ca, X509_REQ_get0_pubkey(req), &o, &leaf), MQPKI_OK);

    /* Nothing from the request: CA:FALSE, no keyCertSign, no DNS SAN, no O=attacker. */
    assert_int_equal(X509_check_ca(leaf), 0);
    bc = X509_get_ext_d2i(leaf, NID_basic_constraints, NULL, NULL);
    assert_non_null(bc);
    assert_false(bc->ca);
    BASIC_CONSTRAINTS_free(bc);
    assert_int_equal(ext_critical(leaf, NID_basic_constraints), 1);
    assert_int_equal(ext_critical(leaf, NID_key_usage), 1);
    assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    assert_int_equal(X509_get_extended_key_usage(leaf), XKU_SSL_CLIENT);
    assert_false(san_has(leaf, GEN_DNS, "evil.example"));
    assert_true(san_has(leaf, GEN_URI, "urn:mqpki:asset:sensor-042"));
    expect_cn(leaf, "sensor-042");
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_organizationName, buf,
                                          sizeof(buf)) > 0);
    assert_string_equal(buf, "mqpki");
    assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(f->issuing)),
                     0);

    /* SKI/AKI, CRL DP, serial, validity of 90 days plus the skew allowance. */
    assert_non_null(X509_get0_subject_key_id(leaf));
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf),
                                           X509_get0_subject_key_id(f->issuing)),
                     0);
    dps = X509_get_ext_d2i(leaf, NID_crl_distribution_points, NULL, NULL);
    assert_non_null(dps);
    {
        DIST_POINT *dp = sk_DIST_POINT_value(dps, 0);
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(dp->distpoint->name.fullname, 0);
        int t;
        ASN1_STRING *s = GENERAL_NAME_get0_value(gn, &t);

        assert_int_equal(t, GEN_URI);
        assert_int_equal(ASN1_STRING_length(s), (int)strlen(CRL_URL));
        assert_memory_equal(ASN1_STRING_get0_data(s), CRL_URL, strlen(CRL_URL));
    }
    CRL_DIST_POINTS_free(dps);
    assert_int_equal(ca_cert_serial_hex(leaf, got), MQPKI_OK);
    assert_string_equal(got, serial);
    {
        int days = 0, secs = 0;

        assert_int_equal(
            ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(leaf), X509_get0_notAfter(leaf)), 1);
        assert_int_equal(days, 90);
        assert_int_equal(secs, 300);
    }
    assert_int_equal(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);
    assert_int_equal(verify_leaf(f, leaf, X509_PURPOSE_SSL_CLIENT), 1);
    X509_free(leaf);
    X509_REQ_free(req);
}

static void test_broker_profile(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    const char *dns[] = {"broker1.example", "localhost"};
    const char *ips[] = {"127.0.0.1", "::1"};
    struct ca_issue_opts o = {.profile = CA_PROFILE_BROKER,
                              .asset_id = "broker1",
                              .dns = dns,
                              .n_dns = 2,
                              .ips = ips,
                              .n_ips = 2,
                              .days = 10};
    X509 *leaf = NULL;
    int days = 0, secs = 0;

    assert_non_null(rsa);
    issue(f, rsa, &o, &leaf);
    assert_int_equal(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER | XKU_SSL_CLIENT);
    assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    assert_int_equal(X509_check_host(leaf, "broker1.example", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(leaf, "localhost", 0, 0, NULL), 1);
    assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_ip_asc(leaf, "::1", 0), 1);
    assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.2", 0), 0);
    assert_true(san_has(leaf, GEN_URI, "urn:mqpki:asset:broker1"));
    assert_int_equal(
        ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(leaf), X509_get0_notAfter(leaf)), 1);
    assert_int_equal(days, 10);
    assert_int_equal(verify_leaf(f, leaf, X509_PURPOSE_SSL_SERVER), 1);
    X509_free(leaf);

    /* The service profile: 30 days by default; EC keys get no keyEncipherment. */
    {
        EVP_PKEY *ec = EVP_EC_gen("P-256");
        struct ca_issue_opts s = {.profile = CA_PROFILE_SERVICE,
                                  .asset_id = "mqpkid",
                                  .dns = dns,
                                  .n_dns = 1,
                                  .not_before = 1700000000};

        issue(f, ec, &s, &leaf);
        assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
        assert_int_equal(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER | XKU_SSL_CLIENT);
        assert_int_equal(
            ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(leaf), X509_get0_notAfter(leaf)), 1);
        assert_int_equal(days, 30);
        {
            ASN1_TIME *t = ASN1_TIME_set(NULL, 1700000000);

            assert_int_equal(ASN1_TIME_compare(t, X509_get0_notBefore(leaf)), 0);
            ASN1_TIME_free(t);
        }
        X509_free(leaf);
        EVP_PKEY_free(ec);
    }
    EVP_PKEY_free(rsa);
}

static void test_issue_refusals(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    const char *bad_ip[] = {"1.2.3.4x"};
    const char *bad_dns[] = {"bad host"};
    const char *dns[] = {"a.example"};
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    struct ca_issue_opts o = {.profile = CA_PROFILE_BROKER, .asset_id = "b1"};
    X509 *leaf = (X509 *)1;

    assert_int_equal(ca_serial_new(serial), MQPKI_OK);
    o.serial_hex = serial;
    o.ips = bad_ip;
    o.n_ips = 1;
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "1.2.3.4x");
    assert_null(leaf);
    o.n_ips = 0;
    o.dns = bad_dns;
    o.n_dns = 1;
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "not a host name");
    o.dns = dns;
    o.asset_id = "-bad";
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "asset id");
    o.asset_id = "d1";
    o.profile = CA_PROFILE_DEVICE;
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "device profile");
    o.n_dns = 0;
    o.serial_hex = "-12";
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "hex digits");
    o.serial_hex = "00";
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "zero");
    o.serial_hex = serial;
    o.days = -1;
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "validity");
    o.days = 0;
    o.profile = (enum ca_profile)9;
    expect_detail(ca_issue_cert(f->ca, k, &o, &leaf), MQPKI_ERR_INVALID, "profile");
    assert_null(leaf);
    EVP_PKEY_free(k);
}

static void test_p384_sha384(void **state)
{
    struct fixture f = {0};
    X509_REQ *req;
    struct ca_issue_opts o = {.profile = CA_PROFILE_DEVICE, .asset_id = "dev384"};
    X509 *leaf = NULL;
    X509_CRL *crl = NULL;

    make_ca(&f, "P-384");
    assert_int_equal(X509_get_signature_nid(f.root), NID_ecdsa_with_SHA384);
    assert_int_equal(X509_get_signature_nid(f.issuing), NID_ecdsa_with_SHA384);
    req = load_csr("csr-p384.der");
    assert_int_equal(ca_csr_check(req), MQPKI_OK);
    issue(&f, X509_REQ_get0_pubkey(req), &o, &leaf);
    assert_int_equal(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA384);
    assert_int_equal(verify_leaf(&f, leaf, X509_PURPOSE_SSL_CLIENT), 1);
    assert_int_equal(ca_crl_build(f.ca, 1, -1, NULL, 0, 1700000000, 1700086400, &crl), MQPKI_OK);
    assert_int_equal(X509_CRL_get_signature_nid(crl), NID_ecdsa_with_SHA384);
    assert_int_equal(X509_CRL_verify(crl, X509_get0_pubkey(f.issuing)), 1);
    X509_CRL_free(crl);
    X509_free(leaf);
    X509_REQ_free(req);
    free_ca(&f);
}

static void test_rsa_ca(void **state)
{
    EVP_PKEY *key = EVP_RSA_gen(2048);
    X509 *root = NULL;

    assert_non_null(key);
    assert_int_equal(ca_root_create(key, "rsa root", 30, &root), MQPKI_OK);
    assert_int_equal(X509_get_signature_nid(root), NID_sha256WithRSAEncryption);
    assert_int_equal(verify_chain(root, NULL, root, 0), 1);
    X509_free(root);
    expect_detail(ca_root_create(key, "", 30, &root), MQPKI_ERR_INVALID, "common name");
    expect_detail(ca_root_create(key, "r", 0, &root), MQPKI_ERR_INVALID, "days");
    assert_null(root);
    EVP_PKEY_free(key);
}

static void test_csr_formats(void **state)
{
    unsigned char *der = NULL, *b64 = NULL, *crlf = NULL, *reder = NULL;
    size_t derlen = 0, i, j, n;
    X509_REQ *req = NULL, *ref;
    BIO *bio;
    char *pem;
    long pemlen;
    int reder_len;

    read_data("csr-p256.der", &der, &derlen);
    ref = load_csr("csr-p256.der");

    /* PEM, both labels. */
    bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_X509_REQ(bio, ref), 1);
    pemlen = BIO_get_mem_data(bio, &pem);
    assert_int_equal(ca_csr_parse((unsigned char *)pem, (size_t)pemlen, &req), MQPKI_OK);
    assert_int_equal(X509_REQ_get_attr_count(req), X509_REQ_get_attr_count(ref));
    reder_len = i2d_X509_REQ(req, &reder);
    assert_int_equal(reder_len, (int)derlen);
    assert_memory_equal(reder, der, derlen);
    OPENSSL_free(reder);
    reder = NULL;
    X509_REQ_free(req);
    req = NULL;
    BIO_free(bio);
    bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_X509_REQ_NEW(bio, ref), 1);
    pemlen = BIO_get_mem_data(bio, &pem);
    assert_non_null(strstr(pem, "NEW CERTIFICATE REQUEST"));
    assert_int_equal(ca_csr_parse((unsigned char *)pem, (size_t)pemlen, &req), MQPKI_OK);
    X509_REQ_free(req);
    req = NULL;
    BIO_free(bio);

    /* Base64 with CRLF every 64 characters and a trailing CRLF, as EST bodies come. */
    b64 = malloc(derlen * 2 + 8);
    n = (size_t)EVP_EncodeBlock(b64, der, (int)derlen);
    crlf = malloc(n * 2 + 8);
    for (i = 0, j = 0; i < n; i++) {
        if (i > 0 && i % 64 == 0) {
            crlf[j++] = '\r';
            crlf[j++] = '\n';
        }
        crlf[j++] = b64[i];
    }
    crlf[j++] = '\r';
    crlf[j++] = '\n';
    assert_int_equal(ca_csr_parse(crlf, j, &req), MQPKI_OK);
    reder_len = i2d_X509_REQ(req, &reder);
    assert_int_equal(reder_len, (int)derlen);
    assert_memory_equal(reder, der, derlen);
    OPENSSL_free(reder);
    X509_REQ_free(req);
    req = NULL;
    /* Plain base64 on one line too. */
    assert_int_equal(ca_csr_parse(b64, n, &req), MQPKI_OK);
    X509_REQ_free(req);

    free(b64);
    free(crlf);
    free(der);
    X509_REQ_free(ref);
}

static void test_csr_parse_errors(void **state)
{
    unsigned char *der = NULL, *buf, *big;
    size_t derlen = 0;
    X509_REQ *req = (X509_REQ *)1;
    BIO *bio;
    char *pem, *two;
    long pemlen;
    X509_REQ *ref = load_csr("csr-p256.der");

    read_data("csr-p256.der", &der, &derlen);
    buf = malloc(derlen + 3);
    memcpy(buf, der, derlen);
    memcpy(buf + derlen, "\x00\x01\x02", 3);
    expect_detail(ca_csr_parse(buf, derlen + 3, &req), MQPKI_ERR_PARSE,
                  "CSR: 3 trailing bytes after the DER structure");
    assert_null(req);
    expect_detail(ca_csr_parse(der, derlen - 10, &req), MQPKI_ERR_PARSE, "DER");
    assert_null(req);
    expect_detail(ca_csr_parse(der, 1, &req), MQPKI_ERR_PARSE, "DER");
    expect_detail(ca_csr_parse((const unsigned char *)"", 0, &req), MQPKI_ERR_PARSE, "empty");
    expect_detail(ca_csr_parse(NULL, 0, &req), MQPKI_ERR_PARSE, "empty");
    expect_detail(ca_csr_parse((const unsigned char *)" \r\n ", 4, &req), MQPKI_ERR_PARSE, "empty");
    expect_detail(ca_csr_parse((const unsigned char *)"hello, world!", 13, &req), MQPKI_ERR_PARSE,
                  "not DER, PEM or base64");
    /* Valid base64 of something that is not a CSR. */
    expect_detail(ca_csr_parse((const unsigned char *)"aGVsbG8gd29ybGQ=", 16, &req),
                  MQPKI_ERR_PARSE, "not a DER");
    expect_detail(ca_csr_parse((const unsigned char *)"MIIBx===AAAA", 12, &req), MQPKI_ERR_PARSE,
                  "CSR");
    /* A PEM CSR followed by a second block, and a PEM of the wrong type. */
    bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_X509_REQ(bio, ref), 1);
    pemlen = BIO_get_mem_data(bio, &pem);
    two = malloc((size_t)pemlen * 2);
    memcpy(two, pem, (size_t)pemlen);
    memcpy(two + pemlen, pem, (size_t)pemlen);
    expect_detail(ca_csr_parse((unsigned char *)two, (size_t)pemlen * 2, &req), MQPKI_ERR_PARSE,
                  "after the PEM block");
    assert_null(req);
    memcpy(two, "-----BEGIN CERTIFICATE-----\n", 28);
    expect_detail(ca_csr_parse((unsigned char *)two, (size_t)pemlen * 2, &req), MQPKI_ERR_PARSE,
                  "CSR");
    free(two);
    BIO_free(bio);
    /* 10 MB is refused before any parsing. */
    big = calloc(10 * 1024 * 1024, 1);
    big[0] = 0x30;
    expect_detail(ca_csr_parse(big, 10 * 1024 * 1024, &req), MQPKI_ERR_TOO_LARGE, "limit");
    assert_null(req);
    expect_detail(ca_csr_parse(big, CA_CSR_MAX + 1, &req), MQPKI_ERR_TOO_LARGE, "limit");
    free(big);
    free(buf);
    free(der);
    X509_REQ_free(ref);
}

static void test_csr_policy(void **state)
{
    X509_REQ *req;
    EVP_PKEY *ed;

    req = load_csr("csr-p256.der");
    assert_int_equal(ca_csr_check(req), MQPKI_OK);
    X509_REQ_free(req);
    req = load_csr("csr-p384.der");
    assert_int_equal(ca_csr_check(req), MQPKI_OK);
    X509_REQ_free(req);
    req = load_csr("csr-rsa1024.der");
    expect_detail(ca_csr_check(req), MQPKI_ERR_POLICY,
                  "CSR key is RSA-1024; policy needs RSA >= 2048 or EC P-256/P-384");
    X509_REQ_free(req);
    req = load_csr("csr-secp256k1.der");
    expect_detail(ca_csr_check(req), MQPKI_ERR_POLICY,
                  "CSR key is EC secp256k1; policy needs EC P-256, EC P-384 or RSA >= 2048");
    X509_REQ_free(req);
    /* The corrupted signature still parses; the policy refuses it. */
    req = load_csr("csr-bad-signature.der");
    expect_detail(ca_csr_check(req), MQPKI_ERR_POLICY,
                  "CSR signature invalid (no proof of possession)");
    X509_REQ_free(req);

    /* Ed25519, built here: a valid signature under a key type outside the allow-list. */
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    req = X509_REQ_new();
    assert_int_equal(X509_REQ_set_pubkey(req, ed), 1);
    assert_true(X509_REQ_sign(req, ed, NULL) > 0);
    expect_detail(ca_csr_check(req), MQPKI_ERR_POLICY, "CSR key is ED25519");
    X509_REQ_free(req);
    EVP_PKEY_free(ed);
    assert_int_equal(ca_csr_check(NULL), MQPKI_ERR_INVALID);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_serials(void **state)
{
    enum { N = 1000 };
    static char s[N][PROTO_SERIAL_HEX_MAX + 1];
    int i, j;

    for (i = 0; i < N; i++) {
        unsigned first;

        assert_int_equal(ca_serial_new(s[i]), MQPKI_OK);
        assert_int_equal(strlen(s[i]), 32);
        for (j = 0; j < 32; j++)
            assert_non_null(strchr("0123456789ABCDEF", s[i][j]));
        assert_int_equal(sscanf(s[i], "%2x", &first), 1);
        assert_true(first >= 1 && first <= 0x7f);
    }
    qsort(s, N, sizeof(s[0]), cmp_str);
    for (i = 1; i < N; i++)
        assert_string_not_equal(s[i - 1], s[i]);
}

static void test_fingerprint(void **state)
{
    struct fixture *f = *state;
    char a[PROTO_FP_HEX_LEN + 1], b[PROTO_FP_HEX_LEN + 1], c[PROTO_FP_HEX_LEN + 1];
    unsigned char *der = NULL, md[32];
    int n;

    assert_int_equal(ca_pubkey_fingerprint(f->issuing_key, a), MQPKI_OK);
    assert_int_equal(ca_pubkey_fingerprint(X509_get0_pubkey(f->issuing), b), MQPKI_OK);
    assert_string_equal(a, b);
    assert_int_equal(strlen(a), 64);
    n = i2d_PUBKEY(f->issuing_key, &der);
    assert_true(n > 0);
    assert_int_equal(EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL), 1);
    mqpki_hex(md, sizeof(md), c);
    assert_string_equal(a, c);
    OPENSSL_free(der);
    assert_int_equal(ca_pubkey_fingerprint(f->root_key, b), MQPKI_OK);
    assert_string_not_equal(a, b);

    /* The same EC key with compressed points: one fingerprint, or a key refused for compromise
     * (or owned by another asset) would pass again re-encoded. */
    {
        EVP_PKEY *compressed = EVP_PKEY_dup(f->issuing_key);
        unsigned char *d1 = NULL, *d2 = NULL;
        int n1, n2;
        assert_non_null(compressed);
        assert_int_equal(
            EVP_PKEY_set_utf8_string_param(compressed, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                           OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_COMPRESSED),
            1);
        n1 = i2d_PUBKEY(f->issuing_key, &d1);
        n2 = i2d_PUBKEY(compressed, &d2);
        assert_true(n1 > 0 && n2 > 0 && n1 != n2); /* really another encoding */
        assert_int_equal(ca_pubkey_fingerprint(compressed, c), MQPKI_OK);
        assert_string_equal(a, c);
        OPENSSL_free(d1);
        OPENSSL_free(d2);
        EVP_PKEY_free(compressed);
    }
    /* The same key with explicit curve parameters (openssl ec -param_enc explicit): the same
     * fingerprint, refused in a CSR (RFC 5480 2.1.1), never certified. */
    {
        EVP_PKEY *explicit_key = EVP_PKEY_dup(f->issuing_key);
        X509_REQ *req = X509_REQ_new();
        X509 *leaf = NULL;
        struct ca_issue_opts o;
        char serial[PROTO_SERIAL_HEX_MAX + 1];
        unsigned char *d1 = NULL, *d2 = NULL;
        int n1, n2;
        assert_non_null(explicit_key);
        assert_int_equal(EVP_PKEY_set_utf8_string_param(explicit_key, OSSL_PKEY_PARAM_EC_ENCODING,
                                                        OSSL_PKEY_EC_ENCODING_EXPLICIT),
                         1);
        n1 = i2d_PUBKEY(f->issuing_key, &d1);
        n2 = i2d_PUBKEY(explicit_key, &d2);
        assert_true(n1 > 0 && n2 > n1); /* the parameters spelled out */
        assert_int_equal(ca_pubkey_fingerprint(explicit_key, c), MQPKI_OK);
        assert_string_equal(a, c);
        assert_non_null(req);
        assert_int_equal(X509_REQ_set_pubkey(req, explicit_key), 1);
        assert_true(X509_REQ_sign(req, explicit_key, EVP_sha256()) > 0);
        expect_detail(ca_csr_check(req), MQPKI_ERR_POLICY, "explicit curve parameters");
        memset(&o, 0, sizeof(o));
        assert_int_equal(ca_serial_new(serial), MQPKI_OK);
        o.profile = CA_PROFILE_DEVICE;
        o.asset_id = "dev1";
        o.serial_hex = serial;
        expect_detail(ca_issue_cert(f->ca, explicit_key, &o, &leaf), MQPKI_ERR_POLICY,
                      "explicit curve parameters");
        assert_null(leaf);
        OPENSSL_free(d1);
        OPENSSL_free(d2);
        X509_REQ_free(req);
        EVP_PKEY_free(explicit_key);
    }
}

/* ca_csr_read, issuance's way in: for each test request the verdict, request hash and key
 * fingerprint of ca_csr_parse + ca_csr_check; canonical EC requests without OpenSSL's parse. */
static void test_csr_read(void **state)
{
    static const struct {
        const char *file;
        int rc;
        int fast; /* read without an X509_REQ */
    } cases[] = {
        {"csr-p256.der", MQPKI_OK, 1},
        {"csr-p384.der", MQPKI_OK, 1},
        {"csr-ca-true.pem", MQPKI_OK, 1},
        {"csr-bad-signature.der", MQPKI_ERR_POLICY, 0},
        {"csr-rsa1024.der", MQPKI_ERR_POLICY, 0},
        {"csr-secp256k1.der", MQPKI_ERR_POLICY, 0},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned char *data = NULL, *der = NULL, md[32];
        size_t len = 0;
        X509_REQ *req = NULL;
        struct ca_csr csr;
        char a[PROTO_FP_HEX_LEN + 1], b[PROTO_FP_HEX_LEN + 1], detail[256];
        int n, rc;

        read_data(cases[i].file, &data, &len);
        rc = ca_csr_read(data, len, &csr);
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        assert_int_equal(rc, cases[i].rc);
        assert_int_equal(ca_csr_parse(data, len, &req), MQPKI_OK);
        if (rc != MQPKI_OK) {
            /* The same refusal, word for word. */
            assert_int_equal(ca_csr_check(req), rc);
            assert_string_equal(detail, mqpki_err_detail(rc));
            assert_null(csr.pub);
        } else {
            assert_int_equal(ca_csr_check(req), MQPKI_OK);
            assert_int_equal(csr.req == NULL, cases[i].fast);
            assert_non_null(csr.spki);
            assert_int_equal(ca_spki_fingerprint(csr.spki, a), MQPKI_OK);
            assert_int_equal(ca_pubkey_fingerprint(X509_REQ_get0_pubkey(req), b), MQPKI_OK);
            assert_string_equal(a, b);
            assert_int_equal(EVP_PKEY_eq(csr.pub, X509_REQ_get0_pubkey(req)), 1);
            n = i2d_X509_REQ(req, &der);
            assert_true(n > 0);
            assert_non_null(SHA256(der, (size_t)n, md));
            assert_memory_equal(md, csr.sha256, sizeof(md));
        }
        ca_csr_clear(&csr);
        OPENSSL_free(der);
        X509_REQ_free(req);
        free(data);
        mqpki_err_clear();
    }
}

/* A request for key, signed by it, parsed back as the CA reads requests. */
static X509_REQ *csr_for(EVP_PKEY *key)
{
    X509_REQ *req = X509_REQ_new(), *back = NULL;
    unsigned char *der = NULL;
    int n;

    assert_non_null(req);
    assert_int_equal(X509_REQ_set_pubkey(req, key), 1);
    assert_true(X509_REQ_sign(req, key, EVP_sha256()) > 0);
    n = i2d_X509_REQ(req, &der);
    assert_true(n > 0);
    assert_int_equal(ca_csr_parse(der, (size_t)n, &back), MQPKI_OK);
    OPENSSL_free(der);
    X509_REQ_free(req);
    return back;
}

static void spki_der(X509 *x, unsigned char **der, int *n)
{
    *der = NULL;
    *n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), der);
    assert_true(*n > 0);
}

/* A canonical EC key is fingerprinted and certified from the request's own DER, with the same
 * results as from the decoded key; any other form is never taken as it is. */
static void test_spki_as_is(void **state)
{
    struct fixture *f = *state;
    X509_REQ *req = csr_for(f->issuing_key);
    const X509_PUBKEY *spki = X509_REQ_get_X509_PUBKEY(req);
    char a[PROTO_FP_HEX_LEN + 1], b[PROTO_FP_HEX_LEN + 1], serial[PROTO_SERIAL_HEX_MAX + 1];
    struct ca_issue_opts o = {.profile = CA_PROFILE_DEVICE, .asset_id = "dev1"};
    X509 *fast = NULL, *slow = NULL;
    unsigned char *d1, *d2;
    int n1, n2;

    assert_true(ca_spki_canonical(spki));
    assert_int_equal(ca_spki_fingerprint(spki, a), MQPKI_OK);
    assert_int_equal(ca_pubkey_fingerprint(f->issuing_key, b), MQPKI_OK);
    assert_string_equal(a, b);
    assert_int_equal(ca_serial_new(serial), MQPKI_OK);
    o.serial_hex = serial;
    o.spki = spki;
    assert_int_equal(ca_issue_cert(f->ca, X509_REQ_get0_pubkey(req), &o, &fast), MQPKI_OK);
    o.spki = NULL;
    assert_int_equal(ca_issue_cert(f->ca, X509_REQ_get0_pubkey(req), &o, &slow), MQPKI_OK);
    spki_der(fast, &d1, &n1);
    spki_der(slow, &d2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(d1, d2, (size_t)n1);
    OPENSSL_free(d1);
    OPENSSL_free(d2);
    /* The certificate verifies under the issuing CA and carries the request's key, and its
     * subject key identifier is that of the key. */
    assert_int_equal(X509_verify(fast, X509_get0_pubkey(f->issuing)), 1);
    assert_null(X509_get0_pubkey(fast)); /* no key object: as documented */
    ERR_clear_error();
    {
        unsigned char *der = NULL;
        const unsigned char *p;
        int n = i2d_X509(fast, &der);
        X509 *back;
        assert_true(n > 0);
        p = der;
        back = d2i_X509(NULL, &p, n);
        assert_non_null(back);
        assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(back), f->issuing_key), 1);
        X509_free(back);
        OPENSSL_free(der);
    }
    assert_int_equal(
        ASN1_OCTET_STRING_cmp(X509_get0_subject_key_id(fast), X509_get0_subject_key_id(slow)), 0);
    X509_free(fast);
    X509_free(slow);
    X509_REQ_free(req);

    /* Compressed point, explicit curve parameters, RSA: decoded and encoded canonically. */
    {
        const char *fmt[2][2] = {{OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                  OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_COMPRESSED},
                                 {OSSL_PKEY_PARAM_EC_ENCODING, OSSL_PKEY_EC_ENCODING_EXPLICIT}};
        for (int i = 0; i < 2; i++) {
            EVP_PKEY *k = EVP_PKEY_dup(f->issuing_key);
            assert_non_null(k);
            assert_int_equal(EVP_PKEY_set_utf8_string_param(k, fmt[i][0], fmt[i][1]), 1);
            req = csr_for(k);
            assert_false(ca_spki_canonical(X509_REQ_get_X509_PUBKEY(req)));
            assert_int_equal(ca_spki_fingerprint(X509_REQ_get_X509_PUBKEY(req), b),
                             MQPKI_ERR_INVALID);
            mqpki_err_clear();
            X509_REQ_free(req);
            EVP_PKEY_free(k);
        }
    }
    {
        EVP_PKEY *rsa = EVP_RSA_gen(2048);
        assert_non_null(rsa);
        req = csr_for(rsa);
        assert_false(ca_spki_canonical(X509_REQ_get_X509_PUBKEY(req)));
        X509_REQ_free(req);
        EVP_PKEY_free(rsa);
    }
    assert_false(ca_spki_canonical(NULL));
    /* The same point with the BIT STRING's unused-bits octet set: OpenSSL decodes the same key,
     * so its DER is not taken as it is (it would be another fingerprint for one key). */
    {
        EVP_PKEY *k = NULL;
        X509_REQ *r = NULL;
        unsigned char *der = NULL;
        const unsigned char *p;
        X509_PUBKEY *odd;
        int n = 0;
        /* A key whose point ends in an even byte: one unused bit then changes nothing. */
        for (int i = 0; i < 64; i++) {
            EVP_PKEY_free(k);
            X509_REQ_free(r);
            OPENSSL_free(der);
            der = NULL;
            k = EVP_EC_gen("P-256");
            r = csr_for(k);
            n = i2d_X509_PUBKEY(X509_REQ_get_X509_PUBKEY(r), &der);
            if ((der[n - 1] & 1) == 0)
                break;
        }
        assert_int_equal(n, 91); /* P-256: the point is the last 65 bytes */
        assert_int_equal(der[n - 1] & 1, 0);
        der[n - 65 - 1] = 1;
        p = der;
        odd = d2i_X509_PUBKEY(NULL, &p, n);
        assert_non_null(odd);
        assert_true(ca_spki_canonical(X509_REQ_get_X509_PUBKEY(r)));
        assert_false(ca_spki_canonical(odd));
        X509_PUBKEY_free(odd);
        OPENSSL_free(der);
        X509_REQ_free(r);
        EVP_PKEY_free(k);
    }
}

static int reason_of(X509_REVOKED *rev)
{
    int crit = 0;
    ASN1_ENUMERATED *e = X509_REVOKED_get_ext_d2i(rev, NID_crl_reason, &crit, NULL);
    int r;

    if (e == NULL)
        return -1;
    r = (int)ASN1_ENUMERATED_get(e);
    ASN1_ENUMERATED_free(e);
    return r;
}

static X509_REVOKED *find_revoked(X509_CRL *crl, const char *hex)
{
    ASN1_INTEGER *ai = NULL;
    BIGNUM *bn = NULL;
    X509_REVOKED *rev = NULL;

    assert_true(BN_hex2bn(&bn, hex) > 0);
    ai = BN_to_ASN1_INTEGER(bn, NULL);
    assert_int_equal(X509_CRL_get0_by_serial(crl, &rev, ai), 1);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return rev;
}

static void test_crl(void **state)
{
    struct fixture *f = *state;
    struct ca_crl_entry e[5] = {
        {"7F00000000000000000000000000000A", 1700000100, CA_REASON_HOLD},
        {"10000000000000000000000000000001", 1700000200, CA_REASON_KEY_COMPROMISE},
        {"3AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 1700000300, CA_REASON_UNSPECIFIED},
        /* Odd digit count, top bit set (needs a sign octet), GeneralizedTime dates. */
        {"abc", 2524608000 + 86399, CA_REASON_CESSATION},
        {"FF", 951782400 /* 2000-02-29 */, CA_REASON_SUPERSEDED},
    };
    X509_CRL *crl = NULL, *back;
    ASN1_INTEGER *num;
    AUTHORITY_KEYID *aki;
    STACK_OF(X509_REVOKED) * revs;
    unsigned char *der = NULL;
    const unsigned char *p;
    char *pem = NULL;
    size_t len = 0;
    int i;

    assert_int_equal(ca_crl_build(f->ca, 42, -1, e, 5, 1700000400, 1700000400 + 86400, &crl),
                     MQPKI_OK);
    assert_int_equal(X509_CRL_get_version(crl), X509_CRL_VERSION_2);
    assert_int_equal(X509_CRL_verify(crl, X509_get0_pubkey(f->issuing)), 1);
    assert_int_equal(X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(f->issuing)), 0);
    num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    assert_non_null(num);
    assert_int_equal(ASN1_INTEGER_get(num), 42);
    ASN1_INTEGER_free(num);
    aki = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, NULL, NULL);
    assert_non_null(aki);
    assert_int_equal(ASN1_OCTET_STRING_cmp(aki->keyid, X509_get0_subject_key_id(f->issuing)), 0);
    AUTHORITY_KEYID_free(aki);
    assert_int_equal(X509_CRL_get_ext_by_NID(crl, NID_delta_crl, -1), -1);

    revs = X509_CRL_get_REVOKED(crl);
    assert_int_equal(sk_X509_REVOKED_num(revs), 5);
    /* Sorted by serial. */
    for (i = 1; i < 5; i++)
        assert_true(
            ASN1_INTEGER_cmp(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revs, i - 1)),
                             X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revs, i))) < 0);
    assert_int_equal(reason_of(find_revoked(crl, e[0].serial_hex)), 6);
    assert_int_equal(reason_of(find_revoked(crl, e[1].serial_hex)), 1);
    assert_int_equal(reason_of(find_revoked(crl, e[2].serial_hex)), -1);
    for (i = 0; i < 5; i++) {
        ASN1_TIME *t = ASN1_TIME_set(NULL, (time_t)e[i].revoked_at);
        const ASN1_TIME *got = X509_REVOKED_get0_revocationDate(find_revoked(crl, e[i].serial_hex));
        unsigned char *a = NULL, *b = NULL;
        int la = i2d_ASN1_TIME(t, &a), lb = i2d_ASN1_TIME(got, &b);

        /* Byte for byte what OpenSSL writes, UTCTime or GeneralizedTime alike. */
        assert_int_equal(la, lb);
        assert_memory_equal(a, b, (size_t)la);
        OPENSSL_free(a);
        OPENSSL_free(b);
        ASN1_TIME_free(t);
    }
    assert_int_equal(reason_of(find_revoked(crl, "ABC")), CA_REASON_CESSATION);

    /* DER round trip verifies too; the PEM is NUL-terminated. */
    assert_int_equal(ca_crl_der(crl, &der, &len), MQPKI_OK);
    p = der;
    back = d2i_X509_CRL(NULL, &p, (long)len);
    assert_non_null(back);
    assert_ptr_equal(p, der + len);
    assert_int_equal(X509_CRL_verify(back, X509_get0_pubkey(f->issuing)), 1);
    X509_CRL_free(back);
    assert_int_equal(ca_crl_pem(crl, &pem, &len), MQPKI_OK);
    assert_int_equal(strlen(pem), len);
    assert_non_null(strstr(pem, "-----BEGIN X509 CRL-----"));
    /* The PEM of the DER as it is: the same bytes, without a parse. */
    {
        char *pem2 = NULL;
        size_t len2 = 0, der_len = 0;
        unsigned char *der2 = NULL;
        assert_int_equal(ca_crl_der(crl, &der2, &der_len), MQPKI_OK);
        assert_int_equal(ca_crl_der_pem(der2, der_len, &pem2, &len2), MQPKI_OK);
        assert_int_equal(len2, len);
        assert_memory_equal(pem2, pem, len);
        free(pem2);
        assert_int_equal(ca_crl_der_pem(NULL, 0, &pem2, &len2), MQPKI_ERR_INVALID);
        assert_null(pem2);
        mqpki_err_clear();
        free(der2);
    }
    free(der);
    free(pem);
    X509_CRL_free(crl);

    /* Refusals. */
    expect_detail(ca_crl_build(f->ca, 1, -1, e, 3, 1700000400, 1700000400, &crl), MQPKI_ERR_INVALID,
                  "nextUpdate");
    e[1].serial_hex = "XYZ";
    expect_detail(ca_crl_build(f->ca, 1, -1, e, 3, 1700000400, 1700086400, &crl), MQPKI_ERR_INVALID,
                  "XYZ");
    e[1].serial_hex = "000";
    expect_detail(ca_crl_build(f->ca, 1, -1, e, 3, 1700000400, 1700086400, &crl), MQPKI_ERR_INVALID,
                  "zero");
    e[1].serial_hex = "10000000000000000000000000000001";
    e[1].reason = (enum ca_reason)7;
    expect_detail(ca_crl_build(f->ca, 1, -1, e, 3, 1700000400, 1700086400, &crl), MQPKI_ERR_INVALID,
                  "reason");
    assert_null(crl);

    /* An empty CRL has no revokedCertificates at all and still verifies. */
    assert_int_equal(ca_crl_build(f->ca, 43, -1, NULL, 0, 1700000400, 1700086400, &crl), MQPKI_OK);
    assert_null(X509_CRL_get_REVOKED(crl));
    assert_int_equal(X509_CRL_verify(crl, X509_get0_pubkey(f->issuing)), 1);
    X509_CRL_free(crl);
}

static void test_delta_crl(void **state)
{
    struct fixture *f = *state;
    struct ca_crl_entry e[1] = {
        {"2B00000000000000000000000000000B", 1700000100, CA_REASON_SUPERSEDED}};
    X509_CRL *crl = NULL;
    ASN1_INTEGER *base;
    int crit = -1;

    assert_int_equal(ca_crl_build(f->ca, 8, 7, e, 1, 1700000400, 1700086400, &crl), MQPKI_OK);
    assert_int_equal(X509_CRL_verify(crl, X509_get0_pubkey(f->issuing)), 1);
    base = X509_CRL_get_ext_d2i(crl, NID_delta_crl, &crit, NULL);
    assert_non_null(base);
    assert_int_equal(crit, 1);
    assert_int_equal(ASN1_INTEGER_get(base), 7);
    ASN1_INTEGER_free(base);
    assert_int_equal(reason_of(find_revoked(crl, e[0].serial_hex)), CA_REASON_SUPERSEDED);
    X509_CRL_free(crl);
    expect_detail(ca_crl_build(f->ca, 8, 8, e, 1, 1700000400, 1700086400, &crl), MQPKI_ERR_INVALID,
                  "base CRL number");
}

static void test_crl_scale(void **state)
{
    enum { N = 100000 };
    struct fixture *f = *state;
    struct ca_crl_entry *e = calloc(N, sizeof(*e));
    char(*hex)[PROTO_SERIAL_HEX_MAX + 1] = calloc(N, sizeof(*hex));
    struct timespec t0, t1;
    X509_CRL *crl = NULL;
    unsigned char *der = NULL;
    size_t i, len = 0;
    double ms;

    assert_non_null(e);
    assert_non_null(hex);
    for (i = 0; i < N; i++) {
        assert_int_equal(ca_serial_new(hex[i]), MQPKI_OK);
        e[i].serial_hex = hex[i];
        e[i].revoked_at = 1700000000 + (int64_t)i;
        e[i].reason = (enum ca_reason)(i % 7);
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(ca_crl_build(f->ca, 9, -1, e, N, 1700000000, 1700086400, &crl), MQPKI_OK);
    assert_int_equal(ca_crl_der(crl, &der, &len), MQPKI_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    print_message("CRL of %d entries: built, signed and DER-encoded in %.0f ms (%zu bytes)\n", N,
                  ms, len);
    {
        unsigned char *raw = NULL;
        size_t rawlen = 0;

        clock_gettime(CLOCK_MONOTONIC, &t0);
        assert_int_equal(ca_crl_encode(f->ca, 9, -1, e, N, 1700000000, 1700086400, &raw, &rawlen),
                         MQPKI_OK);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        print_message("CRL of %d entries: DER only (ca_crl_encode) in %.0f ms\n", N, ms);
        /* The same CRL: it parses, verifies and lists every entry. */
        {
            const unsigned char *p = raw;
            X509_CRL *c2 = d2i_X509_CRL(NULL, &p, (long)rawlen);

            assert_non_null(c2);
            assert_ptr_equal(p, raw + rawlen);
            assert_int_equal(X509_CRL_verify(c2, X509_get0_pubkey(f->issuing)), 1);
            assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(c2)), N);
            X509_CRL_free(c2);
        }
        free(raw);
    }
    assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), N);
    assert_int_equal(X509_CRL_verify(crl, X509_get0_pubkey(f->issuing)), 1);
    free(der);
    X509_CRL_free(crl);
    free(hex);
    free(e);
}

static void test_cert_pem(void **state)
{
    struct fixture *f = *state;
    char *pem = NULL, *two, *big;
    size_t len = 0;
    X509 *back = (X509 *)1;
    char serial[PROTO_SERIAL_HEX_MAX + 1];

    assert_int_equal(ca_cert_pem(f->issuing, &pem, &len), MQPKI_OK);
    assert_int_equal(strlen(pem), len);
    assert_int_equal(ca_cert_from_pem(pem, len, &back), MQPKI_OK);
    assert_int_equal(X509_cmp(back, f->issuing), 0);
    X509_free(back);
    two = malloc(2 * len);
    memcpy(two, pem, len);
    memcpy(two + len, pem, len);
    expect_detail(ca_cert_from_pem(two, 2 * len, &back), MQPKI_ERR_PARSE, "more than one");
    assert_null(back);
    expect_detail(ca_cert_from_pem("junk", 4, &back), MQPKI_ERR_PARSE, "certificate PEM");
    big = calloc(65 * 1024, 1);
    expect_detail(ca_cert_from_pem(big, 65 * 1024, &back), MQPKI_ERR_TOO_LARGE, "limit");
    free(big);
    free(two);
    free(pem);
    assert_int_equal(ca_cert_serial_hex(f->root, serial), MQPKI_OK);
    assert_int_equal(strlen(serial), 32);
}

struct worker {
    struct fixture *f;
    EVP_PKEY *key;
    int failures;
};

static void *issue_many(void *arg)
{
    struct worker *w = arg;
    int i;

    for (i = 0; i < 200; i++) {
        char serial[PROTO_SERIAL_HEX_MAX + 1], id[32];
        struct ca_issue_opts o = {.profile = CA_PROFILE_DEVICE, .asset_id = id};
        X509 *x = NULL;

        snprintf(id, sizeof(id), "dev-%d", i);
        o.serial_hex = serial;
        if (ca_serial_new(serial) != MQPKI_OK || ca_issue_cert(w->f->ca, w->key, &o, &x) != 0 ||
            X509_verify(x, X509_get0_pubkey(w->f->issuing)) != 1)
            w->failures++;
        X509_free(x);
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct worker w[4];
    pthread_t t[4];
    int i;

    for (i = 0; i < 4; i++) {
        w[i].f = *state;
        w[i].key = EVP_EC_gen("P-256");
        w[i].failures = 0;
        assert_int_equal(pthread_create(&t[i], NULL, issue_many, &w[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
        EVP_PKEY_free(w[i].key);
    }
}

/* The audit key's certificate: signed by the root, no CA, a signing key only. */
static void test_audit_cert(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *audit = EVP_EC_gen("P-256");
    X509 *cert = NULL;

    assert_non_null(audit);
    assert_int_equal(
        ca_audit_cert_create(f->root, f->root_key, audit, "mqpki test audit key", 3650, &cert),
        MQPKI_OK);
    assert_int_equal(X509_verify(cert, f->root_key), 1);
    assert_int_equal(X509_verify(cert, f->issuing_key), 0);
    assert_int_equal(X509_check_ca(cert), 0);
    assert_int_equal(ext_critical(cert, NID_basic_constraints), 1);
    assert_int_equal(X509_get_key_usage(cert), KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(cert), audit), 1);
    assert_int_equal(
        ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(cert), X509_get0_subject_key_id(f->root)),
        0);
    expect_cn(cert, "mqpki test audit key");
    ERR_clear_error();
    X509_free(cert);
    assert_int_equal(ca_audit_cert_create(f->root, NULL, audit, "x", 1, &cert), MQPKI_ERR_INVALID);
    assert_null(cert);
    EVP_PKEY_free(audit);
}

/* A CRL of the current key, signed again by an older key of the same name (a rollover): the
 * same TBS but the authority key identifier, verifying under the older issuing CA. */
static void test_crl_resign(void **state)
{
    struct fixture *f = *state;
    struct ca_crl_entry e[3] = {{"0A", 1700000000, CA_REASON_SUPERSEDED},
                                {"0B", 1700000001, CA_REASON_KEY_COMPROMISE},
                                {"0C", 1700000002, CA_REASON_HOLD}};
    EVP_PKEY *new_key = EVP_EC_gen("P-256"), *p384 = EVP_EC_gen("P-384");
    X509 *gen2 = NULL, *other = NULL;
    struct ca *ca2 = NULL, *ca384 = NULL;
    unsigned char *der = NULL, *again = NULL;
    size_t len = 0, again_len = 0;
    const unsigned char *p;
    X509_CRL *a = NULL, *b = NULL;
    AUTHORITY_KEYID *akid;

    assert_non_null(new_key);
    assert_int_equal(
        ca_issuing_create(f->root, f->root_key, new_key, "mqpki test issuing", 1825, &gen2),
        MQPKI_OK);
    assert_int_equal(ca_open(gen2, new_key, f->root, BASE_URL, &ca2), MQPKI_OK);
    for (int base = -1; base <= 4; base += 5) {
        assert_int_equal(
            ca_crl_encode(ca2, 7 + base + 1, base, e, 3, 1700000000, 1700086400, &der, &len),
            MQPKI_OK);
        assert_int_equal(ca_crl_resign(f->ca, der, len, &again, &again_len), MQPKI_OK);
        p = der;
        assert_non_null(a = d2i_X509_CRL(NULL, &p, (long)len));
        p = again;
        assert_non_null(b = d2i_X509_CRL(NULL, &p, (long)again_len));
        assert_ptr_equal(p, again + again_len);
        assert_int_equal(X509_CRL_verify(b, X509_get0_pubkey(f->issuing)), 1);
        assert_int_not_equal(X509_CRL_verify(b, X509_get0_pubkey(gen2)), 1);
        akid = X509_CRL_get_ext_d2i(b, NID_authority_key_identifier, NULL, NULL);
        assert_non_null(akid);
        assert_int_equal(ASN1_OCTET_STRING_cmp(akid->keyid, X509_get0_subject_key_id(f->issuing)),
                         0);
        AUTHORITY_KEYID_free(akid);
        assert_int_equal(X509_CRL_cmp(a, b), 0);
        assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(b)), 3);
        assert_int_equal(
            ASN1_TIME_compare(X509_CRL_get0_lastUpdate(a), X509_CRL_get0_lastUpdate(b)), 0);
        X509_CRL_free(a);
        X509_CRL_free(b);
        free(again);
        again = NULL;
        if (base >= 0)
            break;
        free(der);
        der = NULL;
    }
    /* Another algorithm cannot sign the same TBS: refused, nothing made. */
    assert_int_equal(
        ca_issuing_create(f->root, f->root_key, p384, "mqpki test issuing", 1825, &other),
        MQPKI_OK);
    assert_int_equal(ca_open(other, p384, f->root, BASE_URL, &ca384), MQPKI_OK);
    expect_detail(ca_crl_resign(ca384, der, len, &again, &again_len), MQPKI_ERR_STATE,
                  "another signature algorithm");
    assert_null(again);
    /* Garbage is refused. */
    assert_int_equal(ca_crl_resign(f->ca, der, len / 2, &again, &again_len), MQPKI_ERR_PARSE);
    free(der);
    ca_free(ca2);
    ca_free(ca384);
    X509_free(gen2);
    X509_free(other);
    EVP_PKEY_free(new_key);
    EVP_PKEY_free(p384);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),          cmocka_unit_test(test_hierarchy),
        cmocka_unit_test(test_open_mismatch),  cmocka_unit_test(test_leaf_from_ca_true_csr),
        cmocka_unit_test(test_broker_profile), cmocka_unit_test(test_issue_refusals),
        cmocka_unit_test(test_p384_sha384),    cmocka_unit_test(test_rsa_ca),
        cmocka_unit_test(test_csr_formats),    cmocka_unit_test(test_csr_parse_errors),
        cmocka_unit_test(test_csr_policy),     cmocka_unit_test(test_serials),
        cmocka_unit_test(test_fingerprint),    cmocka_unit_test(test_crl),
        cmocka_unit_test(test_delta_crl),      cmocka_unit_test(test_crl_scale),
        cmocka_unit_test(test_cert_pem),       cmocka_unit_test(test_threads),
        cmocka_unit_test(test_audit_cert),     cmocka_unit_test(test_spki_as_is),
        cmocka_unit_test(test_csr_read),       cmocka_unit_test(test_crl_resign),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
