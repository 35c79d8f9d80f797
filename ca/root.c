/*
 * The CA hierarchy: root and issuing CA certificates, the opened issuer (struct ca) and the
 * helpers the other ca/ files share. Every signature goes through X509_sign() with the key as
 * hsm/ hands it, so a token key (which can only sign) works like a software key.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ca_int.h"
#include "common.h"
#include "proto.h"

/* Longest accepted CA validity: 100 years. */
#define CA_DAYS_MAX 36500

int ca_reason_parse(const char *name)
{
    size_t i;

    /* The names are the wire contract's (proto_reason_name). */
    for (i = 0; name != NULL && i <= CA_REASON_REMOVE_FROM_CRL; i++)
        if (proto_reason_name((int)i) != NULL && strcmp(name, proto_reason_name((int)i)) == 0)
            return (int)i;
    return -1;
}

const char *ca_reason_name(enum ca_reason reason)
{
    return proto_reason_name((int)reason);
}

int ca_ossl_fail(int rc, const char *step)
{
    char buf[256] = "no OpenSSL error queued";
    unsigned long e = ERR_get_error();

    if (e != 0)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return mqpki_fail(rc, "%s: %s", step, buf);
}

const EVP_MD *ca_md_for_key(EVP_PKEY *key)
{
    /* Base id and size are public properties: they work for a foreign (token) key too. */
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_EC: return EVP_PKEY_get_bits(key) >= 384 ? EVP_sha384() : EVP_sha256();
    case EVP_PKEY_RSA: return EVP_sha256();
    default: return NULL;
    }
}

int ca_key_id(X509 *cert, ASN1_OCTET_STRING **out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    ASN1_OCTET_STRING *id = NULL;
    int rc = MQPKI_OK;

    *out = NULL;
    if (!X509_pubkey_digest(cert, EVP_sha1(), md, &mdlen)) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "key identifier");
        goto out;
    }
    id = ASN1_OCTET_STRING_new();
    if (id == NULL || !ASN1_OCTET_STRING_set(id, md, (int)mdlen)) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    *out = id;
    id = NULL;
out:
    ASN1_OCTET_STRING_free(id);
    return rc;
}

int ca_set_validity(X509 *x, int64_t not_before, int64_t seconds)
{
    /* ASN1_TIME_set() picks UTCTime or GeneralizedTime by year, as RFC 5280 requires. */
    if (ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(x), (time_t)(not_before + seconds)) == NULL)
        return ca_ossl_fail(MQPKI_ERR_CRYPTO, "set validity");
    return MQPKI_OK;
}

int ca_name_build(const char *cn, X509_NAME **out)
{
    X509_NAME *name = NULL;
    size_t len = cn != NULL ? strlen(cn) : 0;
    int rc = MQPKI_OK;

    *out = NULL;
    if (len == 0 || len > 64) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "common name must be 1 to 64 characters (X.520)");
        goto out;
    }
    name = X509_NAME_new();
    if (name == NULL ||
        !X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_UTF8,
                                    (const unsigned char *)"mqpki", -1, -1, 0) ||
        !X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                    -1, -1, 0)) {
        rc = ca_ossl_fail(MQPKI_ERR_INVALID, "subject name");
        goto out;
    }
    *out = name;
    name = NULL;
out:
    X509_NAME_free(name);
    return rc;
}

int ca_add_ext(X509 *x, int nid, void *val, int crit, const char *what)
{
    if (X509_add1_ext_i2d(x, nid, val, crit, X509V3_ADD_REPLACE) != 1)
        return ca_ossl_fail(MQPKI_ERR_CRYPTO, what);
    return MQPKI_OK;
}

/* pathlen of build_ca_cert for a certificate that is no CA: the audit key's. */
#define NOT_A_CA (-2)

/*
 * CA extensions: basicConstraints critical CA:TRUE (pathlen when >= 0), keyUsage critical
 * keyCertSign+cRLSign, SKI from x's key and AKI keyid from the issuer's key identifier. With
 * pathlen NOT_A_CA: CA:FALSE and keyUsage digitalSignature+nonRepudiation (a signing key whose
 * signatures stand for the CA's records, never for certificates).
 */
static int add_ca_exts(X509 *x, long pathlen, const ASN1_OCTET_STRING *issuer_kid)
{
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
    AUTHORITY_KEYID *aki = AUTHORITY_KEYID_new();
    ASN1_OCTET_STRING *ski = NULL;
    int rc;

    if (bc == NULL || ku == NULL || aki == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    bc->ca = pathlen == NOT_A_CA ? 0 : 0xFF;
    if (pathlen >= 0) {
        bc->pathlen = ASN1_INTEGER_new();
        if (bc->pathlen == NULL || !ASN1_INTEGER_set(bc->pathlen, pathlen)) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
    }
    /* KeyUsage bits (RFC 5280 4.2.1.3): digitalSignature (0), nonRepudiation (1),
     * keyCertSign (5), cRLSign (6). */
    if (pathlen == NOT_A_CA
            ? !ASN1_BIT_STRING_set_bit(ku, 0, 1) || !ASN1_BIT_STRING_set_bit(ku, 1, 1)
            : !ASN1_BIT_STRING_set_bit(ku, 5, 1) || !ASN1_BIT_STRING_set_bit(ku, 6, 1)) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = ca_key_id(x, &ski)) != MQPKI_OK)
        goto out;
    /* A self-signed root names its own key identifier as the authority key. */
    aki->keyid = ASN1_OCTET_STRING_dup(issuer_kid != NULL ? issuer_kid : ski);
    if (aki->keyid == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = ca_add_ext(x, NID_basic_constraints, bc, 1, "basicConstraints")) != MQPKI_OK ||
        (rc = ca_add_ext(x, NID_key_usage, ku, 1, "keyUsage")) != MQPKI_OK ||
        (rc = ca_add_ext(x, NID_subject_key_identifier, ski, 0, "subjectKeyIdentifier")) !=
            MQPKI_OK ||
        (rc = ca_add_ext(x, NID_authority_key_identifier, aki, 0, "authorityKeyIdentifier")) !=
            MQPKI_OK)
        goto out;
out:
    BASIC_CONSTRAINTS_free(bc);
    ASN1_BIT_STRING_free(ku);
    AUTHORITY_KEYID_free(aki);
    ASN1_OCTET_STRING_free(ski);
    return rc;
}

/* A fresh random serial as an ASN1_INTEGER. */
static int new_serial(ASN1_INTEGER **out)
{
    char hex[PROTO_SERIAL_HEX_MAX + 1];
    int rc;

    if ((rc = ca_serial_new(hex)) != MQPKI_OK)
        return rc;
    return ca_serial_parse(hex, out);
}

/*
 * Builds and signs a CA certificate for pub under subject cn. issuer NULL makes it self-signed
 * (a root); otherwise issuer names the signer and supplies the AKI.
 */
static int build_ca_cert(const char *cn, EVP_PKEY *pub, X509 *issuer, EVP_PKEY *sign_key, int days,
                         long pathlen, X509 **out)
{
    X509 *x = NULL;
    X509_NAME *subject = NULL;
    ASN1_INTEGER *serial = NULL;
    ASN1_OCTET_STRING *issuer_kid = NULL;
    const EVP_MD *md;
    int rc;

    *out = NULL;
    if (days <= 0 || days > CA_DAYS_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "CA validity must be 1 to %d days", CA_DAYS_MAX);
        goto out;
    }
    md = ca_md_for_key(sign_key);
    if (md == NULL || ca_md_for_key(pub) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "CA keys must be EC P-256, EC P-384 or RSA");
        goto out;
    }
    if ((rc = ca_name_build(cn, &subject)) != MQPKI_OK || (rc = new_serial(&serial)) != MQPKI_OK)
        goto out;
    x = X509_new();
    if (x == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (!X509_set_version(x, X509_VERSION_3) || !X509_set_serialNumber(x, serial) ||
        !X509_set_subject_name(x, subject) ||
        !X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : subject) ||
        !X509_set_pubkey(x, pub)) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "CA certificate fields");
        goto out;
    }
    if ((rc = ca_set_validity(x, mqpki_now() - CA_SKEW_SECONDS,
                              CA_SKEW_SECONDS + (int64_t)days * 86400)) != MQPKI_OK)
        goto out;
    if (issuer != NULL) {
        const ASN1_OCTET_STRING *kid = X509_get0_subject_key_id(issuer);

        /* A root without SKI (not one of ours) still gets a correct AKI: hash its key. */
        if (kid != NULL)
            issuer_kid = ASN1_OCTET_STRING_dup(kid);
        else if ((rc = ca_key_id(issuer, &issuer_kid)) != MQPKI_OK)
            goto out;
        if (issuer_kid == NULL) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
    }
    if ((rc = add_ca_exts(x, pathlen, issuer_kid)) != MQPKI_OK)
        goto out;
    if (X509_sign(x, sign_key, md) <= 0) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "sign CA certificate");
        goto out;
    }
    *out = x;
    x = NULL;
out:
    X509_free(x);
    X509_NAME_free(subject);
    ASN1_INTEGER_free(serial);
    ASN1_OCTET_STRING_free(issuer_kid);
    return rc;
}

int ca_root_create(EVP_PKEY *key, const char *name, int days, X509 **out)
{
    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_root_create: out is NULL");
    *out = NULL;
    if (key == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "root CA: no key");
    return build_ca_cert(name, key, NULL, key, days, -1, out);
}

int ca_issuing_create(X509 *root, EVP_PKEY *root_key, EVP_PKEY *issuing_key, const char *name,
                      int days, X509 **out)
{
    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_issuing_create: out is NULL");
    *out = NULL;
    if (root == NULL || root_key == NULL || issuing_key == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "issuing CA: root, root key and key are needed");
    /* pathlen 0: the issuing CA signs leaves only, never another CA. */
    return build_ca_cert(name, issuing_key, root, root_key, days, 0, out);
}

int ca_audit_cert_create(X509 *root, EVP_PKEY *root_key, EVP_PKEY *audit_key, const char *name,
                         int days, X509 **out)
{
    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_audit_cert_create: out is NULL");
    *out = NULL;
    if (root == NULL || root_key == NULL || audit_key == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "audit key certificate: root, root key and key needed");
    /* The root, not the issuing CA: whoever can only get leaves signed cannot make one. */
    return build_ca_cert(name, audit_key, root, root_key, days, NOT_A_CA, out);
}

int ca_ca_request(EVP_PKEY *key, const X509_NAME *subject, char **pem, size_t *len)
{
    const EVP_MD *md = ca_md_for_key(key);
    X509_REQ *req = X509_REQ_new();
    BIO *bio = NULL;
    char *data = NULL;
    long n;
    int rc = MQPKI_OK;

    *pem = NULL;
    *len = 0;
    if (req == NULL)
        return MQPKI_ERR_NOMEM;
    if (md == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "CA keys must be EC P-256, EC P-384 or RSA");
        goto out;
    }
    if (!X509_REQ_set_version(req, X509_REQ_VERSION_1) ||
        !X509_REQ_set_subject_name(req, subject) || !X509_REQ_set_pubkey(req, key) ||
        X509_REQ_sign(req, key, md) <= 0) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "sign the CA request");
        goto out;
    }
    if ((bio = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509_REQ(bio, req) ||
        (n = BIO_get_mem_data(bio, &data)) <= 0 || (*pem = malloc((size_t)n + 1)) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    memcpy(*pem, data, (size_t)n);
    (*pem)[n] = '\0';
    *len = (size_t)n;
out:
    BIO_free(bio);
    X509_REQ_free(req);
    return rc;
}

/* cRLDistributionPoints with one fullName URI. */
static int build_crl_dp(const char *uri, X509_EXTENSION **out)
{
    CRL_DIST_POINTS *dps = sk_DIST_POINT_new_null();
    DIST_POINT *dp = DIST_POINT_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    int rc = MQPKI_OK;

    *out = NULL;
    if (dps == NULL || dp == NULL || gn == NULL || ia5 == NULL ||
        !ASN1_STRING_set(ia5, uri, (int)strlen(uri))) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
    ia5 = NULL;
    dp->distpoint = DIST_POINT_NAME_new();
    if (dp->distpoint == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    dp->distpoint->type = 0; /* fullName */
    dp->distpoint->name.fullname = GENERAL_NAMES_new();
    if (dp->distpoint->name.fullname == NULL ||
        !sk_GENERAL_NAME_push(dp->distpoint->name.fullname, gn)) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    gn = NULL;
    if (!sk_DIST_POINT_push(dps, dp)) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    dp = NULL;
    *out = X509V3_EXT_i2d(NID_crl_distribution_points, 0, dps);
    if (*out == NULL)
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "cRLDistributionPoints");
out:
    sk_DIST_POINT_pop_free(dps, DIST_POINT_free);
    DIST_POINT_free(dp);
    GENERAL_NAME_free(gn);
    ASN1_IA5STRING_free(ia5);
    return rc;
}

/* The authorityKeyIdentifier every leaf and CRL of this issuer carries. */
static int build_aki(X509 *issuing, X509_EXTENSION **out)
{
    AUTHORITY_KEYID *aki = AUTHORITY_KEYID_new();
    const ASN1_OCTET_STRING *kid = X509_get0_subject_key_id(issuing);
    int rc = MQPKI_OK;

    *out = NULL;
    if (aki == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (kid != NULL)
        aki->keyid = ASN1_OCTET_STRING_dup(kid);
    else if ((rc = ca_key_id(issuing, &aki->keyid)) != MQPKI_OK)
        goto out;
    if (aki->keyid == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    *out = X509V3_EXT_i2d(NID_authority_key_identifier, 0, aki);
    if (*out == NULL)
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "authorityKeyIdentifier");
out:
    AUTHORITY_KEYID_free(aki);
    return rc;
}

/* A URL goes verbatim into certificates: printable ASCII without spaces only. */
static int url_valid(const char *url)
{
    const unsigned char *p;

    if (*url == '\0' || strlen(url) > 1024)
        return 0;
    for (p = (const unsigned char *)url; *p != '\0'; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return 0;
    return 1;
}

int ca_open(X509 *issuing_cert, EVP_PKEY *issuing_key, X509 *root, const char *base_url,
            struct ca **out)
{
    struct ca *ca = NULL;
    char *uri = NULL;
    size_t n;
    int rc = MQPKI_OK;

    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_open: out is NULL");
    *out = NULL;
    if (issuing_cert == NULL || issuing_key == NULL || root == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "ca_open: issuing certificate, key and root needed");
        goto out;
    }
    /*
     * X509_check_private_key() would read private components a token key does not have; the
     * public parts are enough to catch a mix-up of keys and certificates.
     */
    if (EVP_PKEY_eq(X509_get0_pubkey(issuing_cert), issuing_key) != 1) {
        ERR_clear_error();
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "issuing CA key does not match the issuing CA certificate");
        goto out;
    }
    if (X509_verify(issuing_cert, X509_get0_pubkey(root)) != 1) {
        ERR_clear_error();
        rc = mqpki_fail(MQPKI_ERR_INVALID, "issuing CA certificate is not signed by the root");
        goto out;
    }
    ca = calloc(1, sizeof(*ca));
    if (ca == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    ca->md = ca_md_for_key(issuing_key);
    if (ca->md == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "issuing CA key must be EC P-256, EC P-384 or RSA");
        goto out;
    }
    /* A private, already encoded copy: issuing threads then only read it. */
    ca->issuer_name = X509_NAME_dup(X509_get_subject_name(issuing_cert));
    if (ca->issuer_name == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = build_aki(issuing_cert, &ca->aki)) != MQPKI_OK)
        goto out;
    if (base_url != NULL) {
        if (!url_valid(base_url)) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "CRL base URL must be printable ASCII, no spaces");
            goto out;
        }
        ca->base_url = strdup(base_url);
        if (ca->base_url == NULL) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        /* "https://h:8443/" and "https://h:8443" name the same CRL. */
        n = strlen(ca->base_url);
        while (n > 0 && ca->base_url[n - 1] == '/')
            ca->base_url[--n] = '\0';
        uri = malloc(n + sizeof("/crl/issuing.crl"));
        if (uri == NULL) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        memcpy(uri, ca->base_url, n);
        memcpy(uri + n, "/crl/issuing.crl", sizeof("/crl/issuing.crl"));
        if ((rc = build_crl_dp(uri, &ca->crl_dp)) != MQPKI_OK)
            goto out;
    }
    /* Each reference is recorded as soon as it is taken, so ca_free() drops exactly those. */
    if (X509_up_ref(issuing_cert))
        ca->issuing = issuing_cert;
    if (EVP_PKEY_up_ref(issuing_key))
        ca->key = issuing_key;
    if (X509_up_ref(root))
        ca->root = root;
    if (ca->issuing == NULL || ca->key == NULL || ca->root == NULL) {
        rc = ca_ossl_fail(MQPKI_ERR_INTERNAL, "take references");
        goto out;
    }
    *out = ca;
    ca = NULL;
out:
    free(uri);
    ca_free(ca);
    return rc;
}

void ca_free(struct ca *ca)
{
    if (ca == NULL)
        return;
    X509_free(ca->issuing);
    X509_free(ca->root);
    EVP_PKEY_free(ca->key);
    X509_NAME_free(ca->issuer_name);
    X509_EXTENSION_free(ca->aki);
    X509_EXTENSION_free(ca->crl_dp);
    free(ca->base_url);
    free(ca);
}

X509 *ca_issuing_cert(const struct ca *ca)
{
    return ca != NULL ? ca->issuing : NULL;
}

X509 *ca_root_cert(const struct ca *ca)
{
    return ca != NULL ? ca->root : NULL;
}
